"""Model families served by the evaluation engine (each delivers a ``CaptionModel``)."""
