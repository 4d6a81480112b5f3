"""GLIDER trainer: backbone building, datasets, SFT / ORL / O2O stages, adapter publishing."""
