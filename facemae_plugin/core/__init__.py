"""What every layer uses: the error types, file writing, device choice and per-record seeds (no torch
at import but in ``devices``)."""
