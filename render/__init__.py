"""Body models and headless EGL rendering of AMASS motions into videos."""
