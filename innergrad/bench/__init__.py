"""One benchmark harness for every way of training the gradient-RNN, on every device."""
