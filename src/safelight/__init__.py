"""Safelight: a self-hosted image-generation job server speaking the kie.ai Market API, and its SDK.

`pip install safelight` installs the SDK (`safelight.client`) and the client commands of the
`safelight` CLI; `pip install 'safelight[server]'` adds the server. This module imports nothing:
the package version is read from here by the build (pyproject.toml) and by the SDK's User-Agent.
"""

__version__ = "0.2.0"
