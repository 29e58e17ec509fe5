"""big_transfer_med: BiT pre-training and transfer for natural images and chest X-rays."""
