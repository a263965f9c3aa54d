"""``python manage.py pull|images|import``."""
