"""Long jobs of the training queue. Heavy imports happen inside the functions."""
