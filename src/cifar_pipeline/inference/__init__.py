"""Using a trained model: loading it (file, run or registry), scoring it on the test set,
reading users' images, and cifar-predict."""
