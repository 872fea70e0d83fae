"""Layout: how the code and the suite are laid out."""
