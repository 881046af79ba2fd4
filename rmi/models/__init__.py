"""Models of the paper: backbones (R, D, tiny), the LSTM baseline (section 3.2) and RMI (3.3)."""
