"""Object detection on the MobileNet backbones: SSD (V1) and SSDLite (V2, V3)."""
