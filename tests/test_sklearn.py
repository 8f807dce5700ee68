"""The scikit-learn estimators: scikit-learn's own estimator checks, and its tools driving them."""

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.ensemble import AdaBoostClassifier, BaggingClassifier, VotingClassifier
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from trainlab.registry import ConfigError
from trainlab.sklearn import TrainlabClassifier, TrainlabRegressor

# Small and fast, and a step size large enough that the checks' accuracy / R^2 thresholds are met in 5 epochs.
FAST = {"epochs": 5, "width": 8, "lr": 0.03}

EXPECTED_FAILURES = {
    "check_sample_weight_equivalence_on_dense_data":
        "minibatch SGD: a weight of 2 equals a duplicated sample in expectation only, not fit for fit (the "
        "duplicate changes the batches and the number of steps)",
}


def expected_failures(estimator):
    return EXPECTED_FAILURES


@parametrize_with_checks([TrainlabClassifier(**FAST), TrainlabRegressor(**FAST)],
                         expected_failed_checks=expected_failures)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def blobs():
    x, y = make_blobs(n_samples=120, centers=3, n_features=4, random_state=0)
    return x * 10 + 5, y


def test_pipeline_and_cross_val_score(blobs):
    x, y = blobs
    scores = cross_val_score(make_pipeline(StandardScaler(), TrainlabClassifier(**FAST, preprocess="none")),
                             x, y, cv=2)
    assert scores.shape == (2,) and scores.min() > 0.8


def test_grid_search_sets_the_plain_parameters(blobs):
    x, y = blobs
    search = GridSearchCV(TrainlabClassifier(**FAST), {"width": [4, 8], "lr": [0.01, 0.03]}, cv=2).fit(x, y)
    assert len(search.cv_results_["params"]) == 4
    assert search.best_estimator_.width in (4, 8)
    assert search.best_estimator_.model_.blocks[0].linear.out_features == search.best_estimator_.width


def test_bagging_and_soft_voting(blobs):
    x, y = blobs
    bag = BaggingClassifier(TrainlabClassifier(**FAST), n_estimators=3, random_state=0).fit(x, y)
    assert bag.score(x, y) > 0.8
    voting = VotingClassifier([("a", TrainlabClassifier(**FAST, seed=0)), ("b", TrainlabClassifier(**FAST, seed=1))],
                              voting="soft").fit(x, y)
    proba = voting.predict_proba(x)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    assert voting.score(x, y) > 0.8


def test_adaboost_drives_the_classifier_through_sample_weights(blobs):
    x, y = blobs
    boost = AdaBoostClassifier(TrainlabClassifier(**FAST), n_estimators=3, random_state=0).fit(x, y)
    assert len(boost.estimators_) >= 1 and boost.score(x, y) > 0.8


def test_regression_r2_on_a_linear_target():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    y = x @ np.array([1.0, 2.0, -1.0]) + 0.1 * rng.normal(size=300)
    reg = TrainlabRegressor(epochs=20, width=16, lr=0.02).fit(x[:200], y[:200])
    assert reg.score(x[200:], y[200:]) > 0.9


def test_classes_are_the_given_labels_and_proba_matches_predict(blobs):
    x, y = blobs
    labels = np.array(["cat", "dog", "eel"])[y]
    clf = TrainlabClassifier(**FAST).fit(x, labels)
    assert list(clf.classes_) == ["cat", "dog", "eel"] and clf.n_features_in_ == 4
    assert (clf.classes_[clf.predict_proba(x).argmax(1)] == clf.predict(x)).all()


def test_sample_weight_changes_the_fit_and_uniform_weights_do_not(blobs):
    x, y = blobs
    plain = TrainlabClassifier(**FAST).fit(x, y).predict_proba(x)
    uniform = TrainlabClassifier(**FAST).fit(x, y, sample_weight=np.full(len(y), 3.0)).predict_proba(x)
    np.testing.assert_array_equal(plain, uniform)
    weighted = TrainlabClassifier(**FAST).fit(x, y, sample_weight=1.0 + (y == 0) * 9.0).predict_proba(x)
    assert weighted[y == 0, 0].mean() > plain[y == 0, 0].mean()


def test_config_is_validated_at_fit_with_its_path(blobs):
    x, y = blobs
    with pytest.raises(ConfigError, match="optimizer"):
        TrainlabClassifier(optimizer="adamm").fit(x, y)
    with pytest.raises(ValueError, match="'config' parameter"):
        TrainlabClassifier(config={"epochs": 2}, width=8).fit(x, y)
    clf = TrainlabClassifier(config={"epochs": 2, "model": {"name": "mlp", "width": 4}}).fit(x, y)
    assert clf.model_.blocks[0].linear.out_features == 4 and len(clf.history_) == 2
    with pytest.raises(ValueError, match="'depth' and 'width'"):
        TrainlabClassifier(model="cnn1d", width=8).run_config()
