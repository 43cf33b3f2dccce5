"""Datasets: stratified splits, image folders, preprocessing."""
