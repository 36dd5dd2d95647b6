"""`ovseg propagate`: a person's sparse labels carried through a video by optical flow."""
