"""`python -m fondtrain.cli COMMAND ...` (and `accelerate launch -m fondtrain.cli eval RUN`)."""

from fondtrain.cli import main

main()
