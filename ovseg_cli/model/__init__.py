"""The trainable OV2VSS model, one module per section of the paper.

- ``backbone``: frame features, i.e. the frozen CLIP and the multi-scale features U^l (Sec. III);
- ``spatial_temporal_fusion``: Spatial-Temporal Context Fusion (III-A, Eq. 2-7);
- ``random_frame_enhancement``: Random Frame Enhancement (III-B, Eq. 8-10);
- ``video_text_encoding``: Video Text Encoding and the decoder (III-C, Eq. 11-14);
- ``ov2vss``: the whole model, its clip forward for training and the loss (Eq. 1, 15);
- ``streaming``: the bounded per-video state and the frame-by-frame step used by `segment`;
- ``checkpoint``: safetensors + JSON checkpoints.
"""
