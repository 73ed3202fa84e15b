"""Train a gradient-RNN in a dozen lines, and see exact vs detached training side by side.

    python examples/gradrnn_in_python.py

A teacher GradRNN generates targets; two students of the same family learn them, one with the exact
second-order gradient, one with the hidden state as a detached by-product.
"""

import torch

import innergrad as ig


def make_data(T=16, B=64, seed=0):
    torch.manual_seed(seed)
    teacher = ig.GradRNN(input_size=3, hidden_size=4, hidden_layers=(16,), activation="tanh")
    x = torch.randn(T, B, 3)
    with torch.no_grad():  # the hidden states are still computed under no_grad
        y, _ = teacher(x)
    return x, y


def train(mode, x, y, steps=150, seed=1):
    torch.manual_seed(seed)
    student = ig.GradRNN(input_size=3, hidden_size=4, hidden_layers=(16,), activation="tanh", mode=mode)
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((student(x)[0] - y) ** 2).mean()
        loss.backward()  # exact mode: the loss reaches F through every h_t = dF/dh
        opt.step()
    with torch.no_grad():
        return ((student(x)[0] - y) ** 2).mean().item() / y.var().item()


if __name__ == "__main__":
    x, y = make_data()
    for mode in ("exact", "detached"):
        print(f"{mode:9s} relative MSE after training: {train(mode, x, y):.4f}")
