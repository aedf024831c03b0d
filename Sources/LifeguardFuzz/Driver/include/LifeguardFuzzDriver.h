// Nothing to import: the target exists only to link driver.c into the fuzz binary.
