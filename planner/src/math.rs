//! The one math module: every file of the planner takes its scalar, point, vector and pose types
//! and its tolerances from here. Clinical geometry is f64 throughout (f32 at CT coordinates of
//! 300-400 mm errs by up to 0.3 mm in distance queries).

pub use nalgebra::{Matrix3, Rotation3, Translation3, Unit};

/// Millimetres, degrees, millilitres: every length in the planner is f64 millimetres.
pub type Real = f64;
/// A point, in whatever frame its name says (`p_lps`, `entry_vertebra`).
pub type Point = nalgebra::Point3<f64>;
/// A free vector.
pub type Vector = nalgebra::Vector3<f64>;
/// A unit vector.
pub type UnitVector = Unit<Vector>;
/// A rigid transform, named `a_to_b` so that `p_b = a_to_b * p_a`.
pub type Pose = nalgebra::Isometry3<f64>;
/// The memo tables of the search and the tolerance (keys of a few bit patterns, looked up
/// thousands of times per side): foldhash with a fixed seed, several times cheaper than the
/// standard library's SipHash and the same on every run. Never iterated.
pub type FixedHashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
/// A set of [`FixedHashMap`]'s kind.
pub type FixedHashSet<K> = std::collections::HashSet<K, foldhash::fast::FixedState>;

/// Geometric tolerance for "on the surface" decisions, in millimetres.
pub const EPS_MM: Real = 1e-9;

/// Build a point from a `[x, y, z]` array.
pub fn point(a: [Real; 3]) -> Point {
    Point::new(a[0], a[1], a[2])
}

/// The `[x, y, z]` array of a point.
pub fn array(p: &Point) -> [Real; 3] {
    [p.x, p.y, p.z]
}

/// The `[x, y, z]` array of a vector.
pub fn vec_array(v: &Vector) -> [Real; 3] {
    [v.x, v.y, v.z]
}

/// `x.floor()`, bit for bit (NaN, infinities and signed zeros included), without the libm call
/// that the baseline x86-64 target makes of `f64::floor` (no SSE4.1 `roundsd`): a positive value
/// below 2^52 truncates through an integer, exactly (the integer below it is representable).
/// The screening's balloon term rounds a diameter down on every grid sample it takes.
#[inline]
pub fn floor(x: Real) -> Real {
    if x > 0.0 && x < 4_503_599_627_370_496.0 {
        (x as i64) as Real
    } else {
        x.floor()
    }
}

/// Closest point parameter `t` in `[0, 1]` on segment `a-b` to point `p`.
pub fn segment_param(a: &Point, b: &Point, p: &Point) -> Real {
    let ab = b - a;
    let len2 = ab.norm_squared();
    if len2 <= 0.0 {
        return 0.0;
    }
    ((p - a).dot(&ab) / len2).clamp(0.0, 1.0)
}

/// Distance between the closest points of segments `p0-p1` and `q0-q1` (exact, f64).
pub fn segment_segment_distance(p0: &Point, p1: &Point, q0: &Point, q1: &Point) -> Real {
    let (s, t) = segment_segment_params(p0, p1, q0, q1);
    let a = p0 + (p1 - p0) * s;
    let b = q0 + (q1 - q0) * t;
    (a - b).norm()
}

/// Parameters `(s, t)` of the closest points of two segments (Ericson, Real-Time Collision
/// Detection, 5.1.9).
pub fn segment_segment_params(p0: &Point, p1: &Point, q0: &Point, q1: &Point) -> (Real, Real) {
    let d1 = p1 - p0;
    let d2 = q1 - q0;
    let r = p0 - q0;
    let a = d1.norm_squared();
    let e = d2.norm_squared();
    let f = d2.dot(&r);
    if a <= EPS_MM * EPS_MM && e <= EPS_MM * EPS_MM {
        return (0.0, 0.0);
    }
    if a <= EPS_MM * EPS_MM {
        return (0.0, (f / e).clamp(0.0, 1.0));
    }
    let c = d1.dot(&r);
    if e <= EPS_MM * EPS_MM {
        return ((-c / a).clamp(0.0, 1.0), 0.0);
    }
    let b = d1.dot(&d2);
    let denom = a * e - b * b;
    let mut s = if denom > 0.0 {
        ((b * f - c * e) / denom).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mut t = (b * s + f) / e;
    if t < 0.0 {
        t = 0.0;
        s = (-c / a).clamp(0.0, 1.0);
    } else if t > 1.0 {
        t = 1.0;
        s = ((b - c) / a).clamp(0.0, 1.0);
    }
    (s, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`floor`] is `f64::floor` bit for bit: signed zeros, values just below and above
    /// integers, the 2^52 edge, huge, infinite and NaN values, and a sweep of fractions.
    #[test]
    fn floor_is_f64_floor_bit_for_bit() {
        let two52 = 4_503_599_627_370_496.0;
        let mut xs = vec![
            0.0,
            -0.0,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            0.5,
            -0.5,
            1.0,
            1.0 - f64::EPSILON / 2.0,
            1.0 + f64::EPSILON,
            two52 - 0.5,
            two52,
            two52 + 1.0,
            1e300,
            -1e300,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
        ];
        for i in -4000..4000 {
            let x = i as Real * 0.0137;
            xs.extend([x, x.next_up(), x.next_down(), (i as Real).next_down()]);
        }
        for x in xs {
            assert_eq!(floor(x).to_bits(), x.floor().to_bits(), "floor({x:e})");
        }
        assert!(floor(Real::NAN).is_nan());
    }
}
