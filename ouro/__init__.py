"""Ouro's core library, shared by the Serve app and the training job; imports no Ray."""
