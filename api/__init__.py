"""The stateless front end: every API flavour in, one neutral job out onto Redis."""
