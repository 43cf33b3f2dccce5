"""Model architectures: the small zoo, keras.applications backbones, Keras load and save."""
