"""big_transfer_med: BiT pre-training and transfer for natural images and chest X-rays."""
import os

# Before TensorFlow or jaxlib load (every entry point imports this package
# first): their C++ start-up lines (CPU features, device lists,
# absl::InitializeLog) are noise to a user. A value the user set is kept.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
