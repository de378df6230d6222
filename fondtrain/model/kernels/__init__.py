"""Small C kernels of the CPU hot loop, compiled at first use and loaded with ctypes
(`build`); each has a torch fallback where no C compiler is found."""
