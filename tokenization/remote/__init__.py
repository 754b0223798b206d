"""Code saved into vocabulary folders (loaded there with ``trust_remote_code=True``)."""
