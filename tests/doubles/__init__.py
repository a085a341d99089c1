"""Bug doubles: small in-process stand-ins for upstream controllers, buggy and fixed."""
