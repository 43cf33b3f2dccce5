"""The Keras fold: BN folded into the Keras layers around it, its proof, and the BN statistics it
trusts."""
