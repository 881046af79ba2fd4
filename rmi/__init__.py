"""rmi-pipeline: Recurrent Multimodal Interaction for referring image segmentation.

Subpackages: ``rmi.data`` (loaders, generated datasets, downloads, HDF5 cache), ``rmi.models``
(backbones, LSTM baseline, RMI), and modules for text, training, inference, DenseCRF, metrics,
tables and figures. Everything here is importable and testable without Snakemake.
"""

__version__ = "0.1.0"
