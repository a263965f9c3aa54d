"""Management commands that read like Docker's: pull, images, import."""
