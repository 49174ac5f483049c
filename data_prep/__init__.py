"""data_prep: see the issue tracker; filled in by later work."""
