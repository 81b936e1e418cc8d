"""evspec: event-camera drafters for video-language models, and honest stage timing."""

__version__ = "0.1.0"
