"""The image catalog: repositories, tags, images and their layers."""
