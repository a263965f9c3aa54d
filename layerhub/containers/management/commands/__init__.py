"""``python manage.py create|exec|diff|commit|push|save|history|ps|rm|rmi``."""
