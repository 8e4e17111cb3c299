"""The stage catalogue and the interface every stage implements."""
