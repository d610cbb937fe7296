"""The request path: deadline, validation, fetch, assemble, score, sort, degrade."""
