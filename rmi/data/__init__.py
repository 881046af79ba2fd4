"""Data stage: loaders for the real formats, generated datasets, downloads, the HDF5 cache."""
