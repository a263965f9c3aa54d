"""Docker-like verbs for containers and images: create, exec, diff, commit, push, save..."""
