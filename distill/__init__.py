"""facedistill: distil large face-embedding teachers into MobileNet students."""
__version__ = "0.1.0"
