"""pytest plugin: a `lab` fixture that builds a network-namespace lab for end-to-end tests."""
