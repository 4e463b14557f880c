// Test stand-in for NekRS 25.x mesh3D.h: the layout of the surface geometric factors o_sgeo
// (per face node, Nsgeo values: outward unit normal, tangents t1, t2, surface Jacobian, ...).
#pragma once

constexpr int Nsgeo = 19;
#define NXID 0
#define NYID 1
#define NZID 2

#define T1XID 3
#define T1YID 4
#define T1ZID 5

#define T2XID 6
#define T2YID 7
#define T2ZID 8

#define SJID 9
#define WSJID 10
