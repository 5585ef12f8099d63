"""Model families beside panollava's own: each turns a run directory into a ``CaptionModel`` (see ``original``)."""
