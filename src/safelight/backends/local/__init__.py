"""Local diffusers pipelines, loaded once per worker process and run on a thread per device."""
