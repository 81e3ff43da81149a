"""The bundle both sides share: manifest, preprocessing, input patches, atomic writes, checksums, units. No TensorFlow."""
