"""Array-library-neutral front-end logic shared by :mod:`polykeops.numpy` and :mod:`polykeops.torch`."""
