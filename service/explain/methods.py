"""The explanation methods' names, without torch: front-ends validate with them, service/explain/maps.py computes."""

CAM_METHODS = ("gradcam", "gradcam++", "layercam", "hirescam")
METHODS = (*CAM_METHODS, "integrated_gradients")
