"""Video files: decoding (``reader``), encoding with the audio kept (``writer``), and drawing
masks over frames (``rendering``)."""
