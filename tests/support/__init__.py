"""Helpers the tests share: image builders and real registry servers on loopback."""
