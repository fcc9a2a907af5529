"""MesoScan's video pipeline: URL or file → video → frames → faces → scores → verdict document."""
