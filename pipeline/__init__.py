"""Stages between files and codecs: sources, image I/O, training data, training, evaluation."""
