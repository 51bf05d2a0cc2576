"""swarmlm.net"""
