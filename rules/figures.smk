# Figures (issue 6): per-word progression, mLSTM response maps, qualitative grid, loss curves.
