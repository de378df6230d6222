"""A run folder, read and exported: `files` (its layout, checkpoints checked against their
checksums, loading the members of a run), `export` (a run's models in a single model's
layout, the reference's .pt), `permissions` (files written with the user's umask). Below
train/ and eval/, which both read runs; above model/, whose models it builds."""
