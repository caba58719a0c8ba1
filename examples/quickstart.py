"""
Quick start: random features in a scikit-learn pipeline
=======================================================

Fit ``StandardScaler -> random features -> Ridge`` on the diabetes data that ships
with scikit-learn, and compare how well each feature map approximates the exact
Gaussian (RBF) kernel against :class:`sklearn.kernel_approximation.RBFSampler`
at the same output width.
"""

import numpy as np
from sklearn.datasets import load_diabetes
from sklearn.kernel_approximation import RBFSampler
from sklearn.linear_model import RidgeCV
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from favorkern import (
    HyperbolicRandomFeatures,
    PositiveRandomFeatures,
    TrigonometricRandomFeatures,
    approximate_kernel,
)

X, y = load_diabetes(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
n_components = 256
gamma = 1.0 / (2 * X.shape[1])  # exp(-|x - y|^2 / (2 d)) on standardized data

scaler = StandardScaler().fit(X_train)
Z_test = scaler.transform(X_test)
exact = rbf_kernel(Z_test, gamma=gamma)

print(f"diabetes: n_train={len(X_train)}, d={X.shape[1]}, width={n_components}, gamma={gamma:.3f}")
print(f"{'feature map':<42} {'kernel rel. error':>17} {'test R^2':>9}")
maps = {
    "RBFSampler (random Fourier, iid)": RBFSampler(gamma=gamma, n_components=n_components),
    "TrigonometricRandomFeatures (orthogonal)": TrigonometricRandomFeatures(
        n_components, kernel="rbf", gamma=gamma
    ),
    "PositiveRandomFeatures (orthogonal)": PositiveRandomFeatures(
        n_components, kernel="rbf", gamma=gamma
    ),
    "HyperbolicRandomFeatures (orthogonal)": HyperbolicRandomFeatures(
        n_components, kernel="rbf", gamma=gamma
    ),
}
for name, features in maps.items():
    errors, scores = [], []
    for seed in range(5):
        features.set_params(random_state=seed)
        model = make_pipeline(StandardScaler(), features, RidgeCV(alphas=np.logspace(-3, 3, 13)))
        model.fit(X_train, y_train)
        scores.append(model.score(X_test, y_test))
        approx = approximate_kernel(Z_test, features=model[1])
        errors.append(np.linalg.norm(approx - exact) / np.linalg.norm(exact))
    print(f"{name:<42} {np.mean(errors):>17.4f} {np.mean(scores):>9.3f}")
