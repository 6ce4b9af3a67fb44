"""Real-browser tests of the notebook layer (JupyterLab + headless Chromium)."""
